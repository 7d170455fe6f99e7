-- The two databases of the stack (compose.yaml mounts this into postgres' init folder).
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
