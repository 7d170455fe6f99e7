"""Prefect flows of textclf (thin orchestration over the textclf library)."""
