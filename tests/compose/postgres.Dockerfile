# Stand-in for compose.yaml's `postgres:15` on a machine that reaches no container registry: Debian's
# PostgreSQL 15 on the offline base image (scripts/offline-base-image.sh), with an entrypoint that
# honours the parts of the official image's interface compose.yaml uses. Built only by the compose tier.
FROM python:3.11-slim
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/no-main.conf \
 && apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d \
 && chown postgres:postgres /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
ENTRYPOINT ["postgres-entrypoint.sh"]
