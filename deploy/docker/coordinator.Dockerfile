# The TensorGrid coordinator. From the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t tensorgrid-coordinator .
# Not built by the tests (no container daemon there): its command is checked against the
# coordinator's argument parser (tests/unit/test_deploy.py), and the wheel it installs runs a
# grid in tests/integration/test_wheel.py.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tensorgrid tensorgrid
COPY coordinator coordinator
COPY node node
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY requirements.lock /tmp/requirements.lock
COPY --from=wheel /wheels /wheels
# The referee re-runs rows on CPU: torch's CPU build, then the rest at the lock's versions.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir -c /tmp/requirements.lock "$(ls /wheels/tensorgrid-*.whl)[coordinator,chain]" \
 && useradd --system --home-dir /var/lib/tensorgrid --create-home tensorgrid
USER tensorgrid
VOLUME /var/lib/tensorgrid
# Docker and compose secrets land in /run/secrets: the coordinator takes coordinator.key from
# $CREDENTIALS_DIRECTORY, as under systemd (else it makes one in --data-dir).
ENV CREDENTIALS_DIRECTORY=/run/secrets
EXPOSE 7070 7071
ENTRYPOINT ["tensorgrid-coordinator"]
CMD ["run", "--listen", "0.0.0.0:7070", "--bulk-listen", "0.0.0.0:7071", "--data-dir", "/var/lib/tensorgrid", "--tls-cert", "/run/secrets/tls-cert.pem", "--tls-key", "/run/secrets/tls-key.pem"]
