"""Training: the HF Trainer fine-tuning loop with resume and DDP (``trainer``), its inputs (``data``)
and optional MLM pretraining (``mlm``)."""
