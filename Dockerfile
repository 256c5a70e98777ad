# llm-gateway container image.
#   docker build -t llm-gateway .
#   docker run -p 4000:4000 llm-gateway                      # the embedded default config (mock provider)
#   docker run -p 4000:4000 -v $PWD/my.yaml:/config/gateway.yaml -e LLM_GATEWAY_CONFIG=/config/gateway.yaml llm-gateway
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY providers ./providers
COPY routing ./routing
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
# No .pyc writes at run time (read-only root filesystems), unbuffered logs for the container runtime.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
COPY config /app/config
WORKDIR /app
RUN useradd --system --uid 10001 --no-create-home gateway
USER 10001
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:4000/healthz').status != 200)"
ENTRYPOINT ["llm-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "4000", "--config", "/app/config/gateway.yaml"]
