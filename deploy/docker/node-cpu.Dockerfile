# A TensorGrid node on CPU. From the repository root:
#   docker build -f deploy/docker/node-cpu.Dockerfile -t tensorgrid-node-cpu .
# Not built by the tests (no container daemon there): its command is checked against the
# node's argument parser (tests/unit/test_deploy.py).
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
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir -c /tmp/requirements.lock "$(ls /wheels/tensorgrid-*.whl)[node,chain]" \
 && useradd --system --home-dir /var/lib/tensorgrid --create-home tensorgrid
USER tensorgrid
VOLUME /var/lib/tensorgrid
# The keystore and its password as secrets; the coordinator's address in TENSORGRID_COORDINATOR.
# Tasks run in the node's sandbox: where the container runtime refuses it a network namespace
# (Docker's default seccomp profile blocks unshare), the node says so once and runs them anyway;
# give the container a network that reaches only the coordinator (README).
ENTRYPOINT ["tensorgrid-node"]
CMD ["--keystore", "/run/secrets/node-key.json", "--password-file", "/run/secrets/node-key-password", "run", "--data-dir", "/var/lib/tensorgrid", "--device", "cpu"]
