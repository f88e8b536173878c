# The worker and the API for users with Docker (see compose.yaml). The scripts of this
# repository run the same processes without Docker.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY driftline driftline
COPY streams streams
COPY agents agents
COPY online_models online_models
COPY serving serving
COPY monitoring monitoring
RUN pip install --no-cache-dir .
# The services run as an unprivileged user of their own. The installed code (root's,
# under /usr/local and /app) stays read-only to them; they own their home and the
# directories compose mounts volumes on (a new named volume takes its mount point's owner
# from the image): the data dir, the model registry and Milvus Lite's files.
RUN groupadd --system --gid 10001 driftline \
    && useradd --system --uid 10001 --gid driftline --create-home \
       --home-dir /home/driftline --shell /usr/sbin/nologin driftline \
    && mkdir -p /data /registry /milvus \
    && chown driftline:driftline /data /registry /milvus \
    && chmod 0750 /data /registry /milvus
ENV DRIFTLINE_DATA_DIR=/data
USER driftline:driftline
ENTRYPOINT ["driftline"]
