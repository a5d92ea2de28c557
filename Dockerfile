# The gateway image: `wallet-gateway serve` (default), `wallet-gateway writer` and
# `wallet-gateway migrate`; with `--target loadtest` the same install plus locust.
# Redis and PostgreSQL run as their own containers (docker-compose.yml), so the embedded
# servers that `wallet-gateway up` starts are unused here.

FROM python:3.11-slim AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin gateway

FROM python AS build
RUN python -m venv /opt/venv
COPY . /src
RUN pip install /src

FROM build AS loadtest-build
# the same floor as the `dev` extra of pyproject.toml
RUN pip install "locust>=2.20"

FROM python AS loadtest
COPY --from=loadtest-build /opt/venv /opt/venv
WORKDIR /app
USER gateway
EXPOSE 8089 5557
CMD ["locust", "-f", "loadtests/locustfile.py"]

# Last stage: what `docker build .` makes.
FROM python AS gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/gateway
USER gateway
EXPOSE 8080 8081
CMD ["wallet-gateway", "serve"]
