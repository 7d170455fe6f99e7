"""Test-set evaluation: metrics, slices, calibration, plots, predictions file and the TF-IDF baseline.

``metrics`` holds pure functions, ``plots`` the PNGs, ``baseline`` the TF-IDF + logistic regression
model, and ``report`` the stage function :func:`textclf.evaluate.report.evaluate_model_and_baseline`.
Submodules are imported explicitly so that importing the package stays cheap.
"""
