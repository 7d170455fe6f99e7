# The README's two commands: `make run` (set up + main job) and `make test`.
.PHONY: run test setup

run: setup
	.venv/bin/textclf run

test: setup
	.venv/bin/python -m pytest -m "not slow and not browser and not image and not compose and not stack"

setup:
	bash scripts/setup.sh
