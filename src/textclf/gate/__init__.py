"""The promotion gate: the pure decision (``decision``) and its statistics (``stats``) and behavioural
checks (``behaviour``); the evidence gathered by re-scoring models (``evidence``); the registry through
MLflow's client (``registry``); and the ``textclf gate`` / ``promote`` / ``rollback`` commands (``run``)."""
