# The settings of the local cluster's toolbox image (scripts/image/local-images.sh writes its
# root filesystem with mmdebstrap; scripts/image/oci.py reads only the final stage's settings).
FROM scratch
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
LABEL org.opencontainers.image.title="shoal-toolbox" \
      org.opencontainers.image.description="Debian with python3, curl, iperf3 and redis: the local cluster's workloads"
CMD ["sleep", "infinity"]
