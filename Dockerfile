# syntax=docker/dockerfile:1
# One image for every part of shoal; the command chooses the part:
#   shoal control-plane ... | shoal node-agent ... | shoal ztunnel ... | shoal waypoint ...
#
#   docker build -t shoal:0.1.0 .        (the tag is the package version, pyproject.toml)
#
# `make image` builds the same image with no registry and no Docker: mmdebstrap makes the
# Debian root filesystems and scripts/image/oci.py writes build/shoal-<version>.oci.tar.
# Both run the scripts under image/ with the lists there (tests/image/test_build_inputs.py
# holds them in step), and oci.py takes the image's settings (ENV, USER, WORKDIR, LABEL,
# CMD) from the final stage below.

# -- build: /opt/shoal, a virtual environment with shoal and its pinned dependencies --
FROM debian:bookworm AS build
COPY image/ /tmp/shoal-image/
RUN /tmp/shoal-image/install-packages.sh /tmp/shoal-image/build-packages.txt
RUN /tmp/shoal-image/build-venv.sh /tmp/shoal-image/requirements.txt
COPY . /tmp/shoal-src/
RUN /tmp/shoal-image/install-shoal.sh /tmp/shoal-src

# -- runtime: Debian, python3-bpfcc, libbpf, iptables, iproute2, and /opt/shoal ------
FROM debian:bookworm
COPY image/ /tmp/shoal-image/
RUN /tmp/shoal-image/install-packages.sh /tmp/shoal-image/packages.txt \
 && /tmp/shoal-image/finish-runtime.sh \
 && rm -rf /tmp/shoal-image
COPY --from=build /opt/shoal /opt/shoal
ENV PATH=/opt/shoal/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Non-root unless a part's manifest says otherwise (the node agent and the ztunnel run as
# root with the privileges their DaemonSets grant). Numeric, so runAsNonRoot can check it.
USER 10001:10001
WORKDIR /
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.description="shoal, a sidecarless service mesh: control plane, node agent, ztunnel and waypoint" \
      org.opencontainers.image.licenses="Apache-2.0"
CMD ["shoal", "--help"]
