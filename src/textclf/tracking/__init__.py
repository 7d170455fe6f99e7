"""MLflow tracking: where the store is (``store``), the training run (``run``), the pyfunc model
(``pyfunc``) and lineage (``lineage``). Importing a submodule imports MLflow (~1.5 s): import lazily."""
