# tokenservice server image: `docker build -t tokenservice:0.1.0 .`
# Multi-stage: the build stage installs the server and its runtime dependencies (pinned
# by requirements/constraints.txt) into a virtualenv; the final stage gets only that.
ARG PYTHON_VERSION=3.11.14

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY clients/python clients/python
COPY pyproject.toml README.md ./
COPY service service
RUN python -m venv /opt/tokenservice \
    && /opt/tokenservice/bin/pip install --no-cache-dir --disable-pip-version-check \
       -c requirements/constraints.txt ./clients/python '.[uvloop]'

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tokenservice" \
      org.opencontainers.image.description="gRPC OAuth2 token service, Envoy ext_authz authorizer and shared cache" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/example/tokenservice"
COPY --from=build /opt/tokenservice /opt/tokenservice
ENV PATH=/opt/tokenservice/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so that Kubernetes' runAsNonRoot can verify it (deploy/base: 10001).
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9464
ENTRYPOINT ["tokenservice"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464"]
