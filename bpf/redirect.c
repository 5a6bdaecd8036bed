// shoal's eBPF redirection, compiled and loaded by the node agent with bcc
// (node_agent/ebpf.py). One copy is loaded per agent, pinned, and attached
// per pod; nothing is compiled when a pod enrolls.
//
// Outbound, on each enrolled pod's cgroup (so these run only for sockets that
// the pod's own processes made; the ztunnel's sockets in the pod's netns are
// made by a process of another cgroup and never meet them):
//   shoal_connect4   rewrites a TCP connect() to 127.0.0.1:15001 (the ztunnel's
//                    outbound listener in the pod's netns) and records the
//                    original destination in the socket's local storage.
//                    Whatever the socket's mark: a pod that sets 0x539 itself
//                    is captured all the same.
//   shoal_connect4_dns / shoal_connect6_dns  in their place on a pod whose DNS
//                    is captured: the same, but TCP to port 53 goes to the DNS
//                    proxy (127.0.0.1:15053) instead of 15001, the resolver
//                    recorded the same way (so SO_ORIGINAL_DST names it).
//   shoal_connect6   IPv6 does not go around the mesh: an AF_INET6 socket
//                    connecting to a v4-mapped address (::ffff:a.b.c.d), which
//                    is IPv4 on the wire, is captured as connect4 would
//                    (to ::ffff:127.0.0.1:15001); ::1 and :: (loopback) pass;
//                    any other IPv6 connect fails with EPERM.
//   shoal_sendmsg6   the same refusal for unconnected UDP (sendto).
//   shoal_sockops    (TCP_CONNECT_CB, the local port is known by then) files the
//                    record under (netns cookie, local port) for the ztunnel.
//   shoal_getpeer4/6 keep the app's view: getpeername() shows the original peer.
// On the ztunnel's cgroup:
//   shoal_ztsockops  (PASSIVE_ESTABLISHED_CB on 15001 or 15053) moves the record from
//                    (netns cookie, peer port) into the accepted socket's storage;
//                    (TCP_CONNECT_CB) records the ztunnel's own connections as
//                    uncaptured, by 4-tuple, until they close.
//   shoal_getsockopt answers getsockopt(SOL_IP, SO_ORIGINAL_DST) from it.
// Socket storage dies with its socket; the port-keyed entry lives only between
// the client's SYN and the ztunnel's accept of it (an LRU bounds stragglers).
//
// Inbound, on each enrolled pod's netns:
//   shoal_sk_lookup  hands inbound TCP to the ztunnel's 15006 listener for that
//                    pod (found by the pod IP in the agent's sockhash). Passing
//                    untouched: loopback, 15008 (HBONE), kubelet probes (SNATed
//                    to the probe address), and flows the ztunnel opened (the
//                    uncaptured record: the ztunnel delivering to the app over
//                    the pod's own IP arrives with eth0's ifindex, not lo's, so
//                    ingress_ifindex alone cannot tell). Only the ztunnel's
//                    cgroup can make such a record. No listener yet: dropped.
//                    IPv6 (TCP and UDP) that did not come over loopback: dropped.
//
// Placeholders filled in by the agent: SOCKHASH_FD, OUTBOUND_PORT,
// INBOUND_PORT, HBONE_PORT, DNS_PROXY_PORT, MARK, PROBE_IP (host order).

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef SOL_IP
#define SOL_IP 0
#endif

#define SO_ORIGINAL_DST 80
#define TCP_CLOSE_STATE 7

struct orig_dst {
    u32 ip;     // network order
    u32 port;   // network order, in the low 16 bits
};

struct port_key {
    u64 netns;
    u32 port;   // host order
    u32 pad;
};

struct flow_key {
    u32 src_ip;   // network order
    u32 dst_ip;   // network order
    u32 src_port; // host order
    u32 dst_port; // host order
};

BPF_SK_STORAGE(orig_by_sock, struct orig_dst);
BPF_TABLE("lru_hash", struct port_key, struct orig_dst, orig_by_port, 65536);
// Connections not captured by connect4 (the ztunnel's, marked ones), by 4-tuple,
// from their SYN until they close: sk_lookup lets them through untouched.
BPF_TABLE("lru_hash", struct flow_key, u8, uncaptured, 65536);

static __always_inline struct flow_key flow_of(struct bpf_sock_ops *skops) {
    struct flow_key key = {.src_ip = skops->local_ip4, .dst_ip = skops->remote_ip4,
                           .src_port = skops->local_port, .dst_port = bpf_ntohl(skops->remote_port)};
    return key;
}

// Both connect programs capture here: the socket's record, then the new destination.
static __always_inline int capture(struct bpf_sock_addr *ctx, u32 ip, u32 port) {
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 0;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!rec)
        return 0;  // fail closed: refused rather than let past the ztunnel
    rec->ip = ip;
    rec->port = port;
    return 1;
}

static __always_inline int local_ip4(u32 ip /* network order */) {
    u32 dst = bpf_ntohl(ip);
    return (dst >> 24) == 127 || dst == 0;
}

// Where a captured connect goes: the ztunnel's outbound listener, or, for a pod
// whose DNS is captured, its DNS proxy when the connect is to port 53.
static __always_inline u16 redirect_port(u32 port /* network order */, int dns) {
    return dns && port == bpf_htons(53) ? DNS_PROXY_PORT : OUTBOUND_PORT;
}

static __always_inline int connect4(struct bpf_sock_addr *ctx, int dns) {
    if (ctx->type != SOCK_STREAM || ctx->family != AF_INET)
        return 1;
    u32 ip = ctx->user_ip4;
    if (local_ip4(ip))
        return 1;
    u32 port = ctx->user_port;
    if (!capture(ctx, ip, port))
        return 0;
    ctx->user_ip4 = bpf_htonl(0x7f000001);
    ctx->user_port = bpf_htons(redirect_port(port, dns));
    return 1;
}

int shoal_connect4(struct bpf_sock_addr *ctx) {
    return connect4(ctx, 0);
}

// Instead of shoal_connect4 on a pod whose DNS is captured: TCP to port 53 of a
// non-loopback resolver reaches the DNS proxy (15053) as the iptables chain
// sends loopback and UDP DNS there; SO_ORIGINAL_DST still names the resolver.
int shoal_connect4_dns(struct bpf_sock_addr *ctx) {
    return connect4(ctx, 1);
}

// ::ffff:a.b.c.d, IPv4 through an AF_INET6 socket.
static __always_inline int v4_mapped(u32 w0, u32 w1, u32 w2) {
    return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

// ::1 and :: (which the kernel takes as loopback).
static __always_inline int loopback6(u32 w0, u32 w1, u32 w2, u32 w3) {
    return w0 == 0 && w1 == 0 && w2 == 0 && (w3 == 0 || w3 == bpf_htonl(1));
}

static __always_inline int connect6(struct bpf_sock_addr *ctx, int dns) {
    if (ctx->family != AF_INET6)
        return 1;
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    if (v4_mapped(w0, w1, w2)) {
        if (ctx->type != SOCK_STREAM || local_ip4(w3))
            return 1;  // as connect4: the mesh carries TCP, and loopback stays in the pod
        u32 port = ctx->user_port;
        if (!capture(ctx, w3, port))
            return 0;
        ctx->user_ip6[3] = bpf_htonl(0x7f000001);
        ctx->user_port = bpf_htons(redirect_port(port, dns));
        return 1;
    }
    if (loopback6(w0, w1, w2, w3))
        return 1;
    return 0;  // EPERM: the mesh does not carry IPv6 yet, and nothing goes around it
}

int shoal_connect6(struct bpf_sock_addr *ctx) {
    return connect6(ctx, 0);
}

int shoal_connect6_dns(struct bpf_sock_addr *ctx) {
    return connect6(ctx, 1);
}

int shoal_sendmsg6(struct bpf_sock_addr *ctx) {
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    if (v4_mapped(w0, w1, w2) || loopback6(w0, w1, w2, w3))
        return 1;  // IPv4 UDP is not captured either
    return 0;
}

int shoal_getpeer4(struct bpf_sock_addr *ctx) {
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, 0);
    if (!rec)
        return 1;
    ctx->user_ip4 = rec->ip;
    ctx->user_port = rec->port;
    return 1;
}

int shoal_getpeer6(struct bpf_sock_addr *ctx) {
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, 0);
    if (!rec)
        return 1;  // only a v4-mapped connect is ever recorded
    ctx->user_ip6[0] = 0;
    ctx->user_ip6[1] = 0;
    ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
    ctx->user_ip6[3] = rec->ip;
    ctx->user_port = rec->port;
    return 1;
}

// On the pod's cgroup: a captured connect files its record for the ztunnel's accept.
int shoal_sockops(struct bpf_sock_ops *skops) {
    struct bpf_sock *sk = skops->sk;
    if (!sk || skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
        return 1;
    if (skops->family != AF_INET && skops->family != AF_INET6)  // AF_INET6: a v4-mapped connect
        return 1;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, 0);
    if (!rec)
        return 1;  // loopback: nothing to hand over
    struct port_key key = {.netns = bpf_get_netns_cookie(skops), .port = skops->local_port};
    struct orig_dst copy = *rec;
    orig_by_port.update(&key, &copy);
    return 1;
}

// On the ztunnel's cgroup only, so that no pod can make an uncaptured record.
int shoal_ztsockops(struct bpf_sock_ops *skops) {
    struct bpf_sock *sk = skops->sk;
    if (!sk || skops->family != AF_INET)
        return 1;
    if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
        // Remember the flow so that sk_lookup, which cannot see the socket,
        // does not steer it to the ztunnel (this is how the ztunnel delivers
        // inbound traffic to the app).
        struct flow_key flow = flow_of(skops);
        u8 one = 1;
        uncaptured.update(&flow, &one);
        bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
    } else if (skops->op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == TCP_CLOSE_STATE) {
        struct flow_key flow = flow_of(skops);
        uncaptured.delete(&flow);
    } else if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
               (skops->local_port == OUTBOUND_PORT || skops->local_port == DNS_PROXY_PORT)) {
        struct port_key key = {.netns = bpf_get_netns_cookie(skops),
                               .port = bpf_ntohl(skops->remote_port)};
        struct orig_dst *found = orig_by_port.lookup(&key);
        if (!found)
            return 1;
        struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (rec) {
            rec->ip = found->ip;
            rec->port = found->port;
        }
        orig_by_port.delete(&key);
    }
    return 1;
}

int shoal_getsockopt(struct bpf_sockopt *ctx) {
    if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, 0);
    if (!rec)
        return 1;
    struct sockaddr_in *sin = ctx->optval;
    if ((void *)(sin + 1) > ctx->optval_end)
        return 1;
    sin->sin_family = AF_INET;
    sin->sin_port = rec->port;
    sin->sin_addr.s_addr = rec->ip;
    // volatile: clang would merge the two adjacent 32-bit stores into one
    // 64-bit store, which the verifier refuses for the sockopt context.
    *(volatile int *)&ctx->retval = 0;
    *(volatile int *)&ctx->optlen = sizeof(*sin);
    return 1;
}

int shoal_sk_lookup(struct bpf_sk_lookup *ctx) {
    if (ctx->ingress_ifindex == 1)  // loopback is ifindex 1 in every netns
        return SK_PASS;
    if (ctx->family == AF_INET6)
        return SK_DROP;  // the mesh does not carry IPv6 yet, and nothing goes around it
    if (ctx->family != AF_INET || ctx->protocol != IPPROTO_TCP)
        return SK_PASS;
    if (ctx->local_port == HBONE_PORT)
        return SK_PASS;
    if (bpf_ntohl(ctx->remote_ip4) == PROBE_IP)
        return SK_PASS;
    struct flow_key flow = {.src_ip = ctx->remote_ip4, .dst_ip = ctx->local_ip4,
                            .src_port = bpf_ntohs(ctx->remote_port), .dst_port = ctx->local_port};
    if (uncaptured.lookup(&flow))
        return SK_PASS;
    u32 key = ctx->local_ip4;
    struct bpf_sock *sk = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, SOCKHASH_FD), &key);
    if (!sk)
        return SK_DROP;
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    return err ? SK_DROP : SK_PASS;
}
