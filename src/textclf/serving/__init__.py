"""BentoML packaging (``package``) and the served service (``service``, imported only by BentoML)."""
