# The pause image of the local cluster's containerd: one static program (scripts/image/pause/pause.c).
FROM scratch
LABEL org.opencontainers.image.title="shoal-pause"
CMD ["/pause"]
