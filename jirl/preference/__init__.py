"""Direct preference optimisation: paired and unpaired losses by name
(``jirl.preference.losses.PREFERENCE_LOSSES``), objectives for the training engine
(``objective``), implicit rewards beta log pi/pi_ref (``implicit``), exact expected losses on
enumerable tasks (``exact``) and online DPO (``online``)."""
