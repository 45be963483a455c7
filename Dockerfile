# One image for the three services: `tpipe gateway|enricher|indexer`.
# Build from the repository root: docker build -t telemetry-pipeline .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY gen ./gen
COPY pipeline ./pipeline
COPY gateway ./gateway
COPY enricher ./enricher
COPY indexer ./indexer
COPY tpipe ./tpipe
RUN pip install --no-cache-dir --constraint requirements.lock --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home telemetry
COPY --from=build /install /usr/local
USER telemetry
# Services bind to loopback by default; in a container they must listen on all interfaces.
ENV GATEWAY_HOST=0.0.0.0 \
    ENRICHER_HTTP_HOST=0.0.0.0 ENRICHER_GRPC_HOST=0.0.0.0 \
    INDEXER_HTTP_HOST=0.0.0.0 INDEXER_GRPC_HOST=0.0.0.0
EXPOSE 3000 50051 8081 50052 8082 50053
ENTRYPOINT ["tpipe"]
CMD ["--help"]
