"""Flax NNX models and weights: the decoder transformer (``transformer``, Llama and GPT-2
families), the BERT encoder (``bert``), scalar heads (``heads``), the one log-prob path
(``scoring``), LoRA (``lora``), pretrained weights from safetensors and GGUF (``loading``,
``llama``, ``gpt2``, ``gguf``, ``pretrained``, ``offline``) and tokenizers (``tokenizers``)."""
