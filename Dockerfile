# The twin's image: `labctl sim serve` (and the rest of labctl) on any cluster, no GPU needed.
# `labctl export kubernetes --twin-image NAME` runs the lab's `sim` deployments in it:
#   docker build -t labctl-twin:latest .
# (Not built in CI.)
FROM python:3.11-slim
WORKDIR /opt/labctl
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
EXPOSE 8000
ENTRYPOINT ["labctl"]
CMD ["sim", "serve", "--host", "0.0.0.0", "--port", "8000", "--model", "Qwen/Qwen3-0.6B"]
