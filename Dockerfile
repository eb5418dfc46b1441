# dist-ae GPU image: TensorFlow 2.21 with its CUDA 12 wheels, Horovod 0.28.1 built with NCCL, Open MPI and Gloo
# (launch/install_horovod.sh), and dist-ae, run as the non-root user `distae` (uid 1000).
#
#   docker build -t dist-ae:latest .
#   docker run --rm --gpus all dist-ae:latest train --strategy mirrored --logdir /tmp/run
#   docker run --rm --gpus all -v "$PWD/runs:/runs" dist-ae:latest train --logdir /runs/first
#
# For Kubernetes (launch/kubernetes/), tag it for your registry and push it, e.g.
#   docker tag dist-ae:latest registry.example.com/you/dist-ae:latest && docker push registry.example.com/you/dist-ae:latest
#
# The image also runs an MPIJob's workers: sshd as `distae` on port 2022 (no root, no capabilities), with the keys
# the mpi-operator mounts at /home/distae/.ssh; ssh from the image uses port 2022 too (/etc/ssh/ssh_config.d).
#
# Base: CUDA 12.5.1 + cuDNN 9, what TensorFlow 2.21 was built with (tf.sysconfig.get_build_info()); the devel
# image brings nvcc and NCCL (libnccl2 + libnccl-dev: /usr/include/nccl.h), which Horovod's NCCL build needs.
# Ubuntu 22.04 rather than 24.04: NVIDIA publishes NCCL for CUDA 12.5 on 22.04.
FROM nvidia/cuda:12.5.1-cudnn-devel-ubuntu22.04

ARG DEBIAN_FRONTEND=noninteractive
ARG TENSORFLOW_VERSION=2.21.0
ARG KERAS_VERSION=3.15.1
ARG HOROVOD_VERSION=0.28.1
# GPU architectures Horovod's CUDA kernels are compiled for (TensorFlow 2.21's wheels run on sm_60 and newer);
# fewer makes the build faster, e.g. --build-arg HOROVOD_BUILD_CUDA_CC_LIST=80.
ARG HOROVOD_BUILD_CUDA_CC_LIST=60,70,75,80,86,89,90
# 1 skips install_horovod.sh's run-time checks (hvd.init(), horovodrun --check-build, a 2-rank Gloo allreduce on
# loopback). They need no GPU and run against CUDA's stub driver here; skip them only if the build host cannot.
ARG HOROVOD_SKIP_CHECKS=0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.10 (Ubuntu 22.04's), a C++ toolchain for Horovod, Open MPI, and OpenSSH for mpirun between containers.
# The host keys the package generates are removed: no two containers may share them (workers use the mounted key).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "g++=4:11.2.0-1ubuntu1" \
        "make=4.3-4.1build1" \
        "python3.10=3.10.12-1~22.04.*" \
        "python3.10-dev=3.10.12-1~22.04.*" \
        "python3.10-venv=3.10.12-1~22.04.*" \
        "libopenmpi-dev=4.1.2-2ubuntu1" \
        "openmpi-bin=4.1.2-2ubuntu1" \
        "openssh-client=1:8.9p1-3ubuntu0.*" \
        "openssh-server=1:8.9p1-3ubuntu0.*" \
    && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \
    && test -f /usr/include/nccl.h

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN python3.10 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir pip==24.3.1 setuptools==75.6.0 wheel==0.45.1 \
    && pip install --no-cache-dir "tensorflow[and-cuda]==${TENSORFLOW_VERSION}" "keras==${KERAS_VERSION}"

# Horovod with NCCL and MPI. CUDA's stub libcuda stands in for the driver during the build and the checks (as in
# Horovod's own images); the final ldconfig drops it again, so containers use the real driver. The checks start no
# mpirun, but should Open MPI start a helper as root here, it is allowed to: only while building, as root.
COPY launch/install_horovod.sh /tmp/install_horovod.sh
RUN ldconfig /usr/local/cuda/lib64/stubs \
    && PYTHON="$VIRTUAL_ENV/bin/python" \
        DIST_AE_HOROVOD_VERSION="${HOROVOD_VERSION}" \
        DIST_AE_HOROVOD_WITH_NCCL=1 \
        DIST_AE_HOROVOD_WITH_MPI=1 \
        DIST_AE_HOROVOD_SKIP_CHECKS="${HOROVOD_SKIP_CHECKS}" \
        HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST}" \
        OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        bash /tmp/install_horovod.sh \
    && ldconfig \
    && rm -rf /tmp/install_horovod.sh /root/.cache

# The user, and sshd / ssh for MPIJob workers: sshd runs as distae on an unprivileged port with the key pair the
# mpi-operator mounts (sshAuthMountPath: /home/distae/.ssh) as host key and authorized key.
RUN useradd --create-home --uid 1000 --shell /bin/bash distae \
    && printf '%s\n' \
        'Port 2022' \
        'PidFile /home/distae/.sshd.pid' \
        'HostKey /home/distae/.ssh/id_rsa' \
        'AuthorizedKeysFile .ssh/authorized_keys' \
        'PasswordAuthentication no' \
        'KbdInteractiveAuthentication no' \
        'UsePAM no' \
        'StrictModes no' \
        > /etc/ssh/sshd_config_dist_ae \
    && printf '%s\n' \
        'Host *' \
        '    Port 2022' \
        '    StrictHostKeyChecking no' \
        '    UserKnownHostsFile /dev/null' \
        '    LogLevel ERROR' \
        > /etc/ssh/ssh_config.d/dist-ae.conf \
    && mkdir -p /run/sshd

# dist-ae itself, last: it changes most often.
WORKDIR /tmp/dist-ae
COPY pyproject.toml README.md ./
COPY dist_ae ./dist_ae
RUN pip install --no-cache-dir . \
    && dist-ae train --help > /dev/null \
    && rm -rf /tmp/dist-ae

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
WORKDIR /home/distae
EXPOSE 2022
ENTRYPOINT ["dist-ae"]
CMD ["train", "--help"]
