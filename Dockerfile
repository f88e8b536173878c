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
ENV DRIFTLINE_DATA_DIR=/data
ENTRYPOINT ["driftline"]
