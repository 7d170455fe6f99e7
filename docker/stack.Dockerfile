# One image for mlflow, prefect-server and prefect-worker in compose.yaml: the project's environment
# (the worker runs the pipeline; the servers only need mlflow/prefect + psycopg + boto3, which it has).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/textclf
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir ".[stack]" -c constraints.txt
COPY flows/stack.py ./flows/stack.py
COPY params.yaml ./params.yaml
ENV DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 HOME=/work
# the services run as an unprivileged user (compose.yaml also says `user: "10001:10001"`)
RUN useradd --uid 10001 --home-dir /work --create-home --shell /usr/sbin/nologin textclf
USER 10001:10001
WORKDIR /work
