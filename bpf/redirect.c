// shoal's eBPF redirection, compiled and loaded by the node agent with bcc
// (node_agent/ebpf.py). One copy is loaded per agent, pinned, and attached
// per pod; nothing is compiled when a pod enrolls. Both address families are
// carried: an address is held as 16 bytes, IPv4 in its v4-mapped form
// (::ffff:a.b.c.d), with the family it has on the wire beside it.
//
// Outbound, on each enrolled pod's cgroup (so these run only for sockets that
// the pod's own processes made; the ztunnel's sockets in the pod's netns are
// made by a process of another cgroup and never meet them):
//   shoal_connect4   rewrites a TCP connect() to 127.0.0.1:15001 (the ztunnel's
//                    outbound listener in the pod's netns) and records the
//                    original destination in the socket's local storage.
//                    Whatever the socket's mark: a pod that sets 0x539 itself
//                    is captured all the same.
//   shoal_connect6_carry  on a pod with an IPv6 address: the same for AF_INET6
//                    sockets, TCP to an IPv6 address goes to [::1]:15001 (the
//                    ztunnel's IPv6 outbound listener); UDP passes, as for IPv4.
//   shoal_connect6   on a pod with no IPv6 address: its IPv6 does not go
//                    around the mesh, any IPv6 connect fails with EPERM.
//   Both: loopback (::1, ::, ::ffff:127.x) stays in the pod, and a connect to
//                    a v4-mapped address (::ffff:a.b.c.d), which is IPv4 on the
//                    wire, is captured as connect4 would (to
//                    ::ffff:127.0.0.1:15001, recorded as IPv4).
//   shoal_sendmsg6   on a pod with no IPv6 address: the same refusal for
//                    unconnected UDP (sendto).
//   shoal_connect4_dns / shoal_connect6[_carry]_dns  in their place on a pod
//                    whose DNS is captured: the same, but TCP to port 53 goes to
//                    the DNS proxy (127.0.0.1 or ::1, port 15053) instead of
//                    15001, the resolver recorded the same way (so
//                    SO_ORIGINAL_DST names it).
//   shoal_sockops    (TCP_CONNECT_CB, the local port is known by then) files the
//                    record under (netns cookie, local port, family) for the ztunnel.
//   shoal_getpeer4/6 keep the app's view: getpeername() shows the original peer.
// On the ztunnel's cgroup:
//   shoal_ztsockops  (PASSIVE_ESTABLISHED_CB on 15001 or 15053) moves the record from
//                    (netns cookie, peer port, family) into the accepted socket's
//                    storage; (TCP_CONNECT_CB) records the ztunnel's own
//                    connections as uncaptured, by 4-tuple, until they close.
//   shoal_getsockopt answers getsockopt(SOL_IP, SO_ORIGINAL_DST) with a
//                    sockaddr_in and getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)
//                    with a sockaddr_in6 from it.
// Socket storage dies with its socket; the port-keyed entry lives only between
// the client's SYN and the ztunnel's accept of it (an LRU bounds stragglers).
// The family is part of that key because the kernel may give an IPv4 and an
// IPv6 connect the same ephemeral port (their 4-tuples differ).
//
// Inbound, on each enrolled pod's netns:
//   shoal_sk_lookup  hands inbound TCP to the ztunnel's 15006 listener for that
//                    pod (found by the destination address in the agent's
//                    sockhash, which holds each of the pod's addresses).
//                    Passing untouched: loopback, 15008 (HBONE), kubelet probes
//                    (SNATed to the probe address of their family), and flows the
//                    ztunnel opened (the uncaptured record: the ztunnel delivering
//                    to the app over the pod's own IP arrives with eth0's ifindex,
//                    not lo's, so ingress_ifindex alone cannot tell). Only the
//                    ztunnel's cgroup can make such a record. No listener yet:
//                    dropped. IPv4 UDP passes; IPv6 (TCP or UDP) to an address
//                    that is not one of the pod's enrolled ones (a link-local
//                    address, or any IPv6 of a pod enrolled with IPv4 only) is
//                    dropped, so nothing reaches the app around the mesh.
//
// Placeholders filled in by the agent: SOCKHASH_FD, OUTBOUND_PORT,
// INBOUND_PORT, HBONE_PORT, DNS_PROXY_PORT, MARK, PROBE_IP (host order),
// PROBE_IP6_0..3 (the IPv6 probe address's words, network order).

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef SOL_IP
#define SOL_IP 0
#endif
#ifndef SOL_IPV6
#define SOL_IPV6 41
#endif

#define SO_ORIGINAL_DST 80  // IP6T_SO_ORIGINAL_DST has the same number, at SOL_IPV6
#define TCP_CLOSE_STATE 7

struct addr6 {
    u32 w[4];   // network order; IPv4 as ::ffff:a.b.c.d
};

// One 32-bit load of a context field: clang would merge adjacent ones (the
// words of an IPv6 address) into 64-bit loads, which the verifier refuses.
#define CTX32(field) (*(volatile u32 *)&(field))

struct orig_dst {
    struct addr6 ip;
    u32 port;    // network order, in the low 16 bits
    u32 family;  // on the wire: AF_INET (also for a v4-mapped connect) or AF_INET6
};

struct port_key {
    u64 netns;
    u32 port;    // host order
    u32 family;  // as in orig_dst
};

struct flow_key {
    struct addr6 src;
    struct addr6 dst;
    u32 src_port; // host order
    u32 dst_port; // host order
};

// What getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) returns (struct sockaddr_in6),
// spelled out: bcc's kernel headers and the uapi in6.h do not mix.
struct original_in6 {
    u16 family;
    u16 port;       // network order
    u32 flowinfo;
    struct addr6 addr;
    u32 scope_id;
};

BPF_SK_STORAGE(orig_by_sock, struct orig_dst);
BPF_TABLE("lru_hash", struct port_key, struct orig_dst, orig_by_port, 65536);
// Connections not captured by connect4/6 (the ztunnel's), by 4-tuple, from
// their SYN until they close: sk_lookup lets them through untouched.
BPF_TABLE("lru_hash", struct flow_key, u8, uncaptured, 65536);

static __always_inline struct addr6 mapped4(u32 ip /* network order */) {
    struct addr6 a = {.w = {0, 0, bpf_htonl(0x0000ffff), ip}};
    return a;
}

// ::ffff:a.b.c.d, IPv4 through an AF_INET6 socket.
static __always_inline int v4_mapped(u32 w0, u32 w1, u32 w2) {
    return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

// ::1 and :: (which the kernel takes as loopback).
static __always_inline int loopback6(u32 w0, u32 w1, u32 w2, u32 w3) {
    return w0 == 0 && w1 == 0 && w2 == 0 && (w3 == 0 || w3 == bpf_htonl(1));
}

static __always_inline int local_ip4(u32 ip /* network order */) {
    u32 dst = bpf_ntohl(ip);
    return (dst >> 24) == 127 || dst == 0;
}

static __always_inline struct flow_key flow_of(struct bpf_sock_ops *skops) {
    struct flow_key key = {.src_port = skops->local_port, .dst_port = bpf_ntohl(skops->remote_port)};
    if (skops->family == AF_INET) {
        key.src = mapped4(skops->local_ip4);
        key.dst = mapped4(skops->remote_ip4);
    } else {  // AF_INET6: a dual-stack socket's IPv4 peer is already v4-mapped here, as sk_lookup keys it
        key.src.w[0] = CTX32(skops->local_ip6[0]);
        key.src.w[1] = CTX32(skops->local_ip6[1]);
        key.src.w[2] = CTX32(skops->local_ip6[2]);
        key.src.w[3] = CTX32(skops->local_ip6[3]);
        key.dst.w[0] = CTX32(skops->remote_ip6[0]);
        key.dst.w[1] = CTX32(skops->remote_ip6[1]);
        key.dst.w[2] = CTX32(skops->remote_ip6[2]);
        key.dst.w[3] = CTX32(skops->remote_ip6[3]);
    }
    return key;
}

// The family a sock_ops socket's connection has on the wire (an AF_INET6
// socket talking to a v4-mapped peer sends IPv4).
static __always_inline u32 wire_family(struct bpf_sock_ops *skops) {
    if (skops->family == AF_INET6 &&
        v4_mapped(CTX32(skops->remote_ip6[0]), CTX32(skops->remote_ip6[1]), CTX32(skops->remote_ip6[2])))
        return AF_INET;
    return skops->family;
}

// Every connect program captures here: the socket's record, then the new destination.
static __always_inline int capture(struct bpf_sock_addr *ctx, u32 family, struct addr6 ip, u32 port) {
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 0;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!rec)
        return 0;  // fail closed: refused rather than let past the ztunnel
    rec->ip = ip;
    rec->port = port;
    rec->family = family;
    return 1;
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
    if (!capture(ctx, AF_INET, mapped4(ip), port))
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

// `carry`: the pod has an IPv6 address, so the mesh carries its IPv6 (TCP
// captured, UDP passes as IPv4 UDP does). Without one, its IPv6 is refused
// (EPERM), but for v4-mapped addresses, which are IPv4 on the wire.
static __always_inline int connect6(struct bpf_sock_addr *ctx, int dns, int carry) {
    if (ctx->family != AF_INET6)
        return 1;
    u32 w0 = CTX32(ctx->user_ip6[0]), w1 = CTX32(ctx->user_ip6[1]);
    u32 w2 = CTX32(ctx->user_ip6[2]), w3 = CTX32(ctx->user_ip6[3]);
    u32 port = ctx->user_port;
    if (v4_mapped(w0, w1, w2)) {
        if (ctx->type != SOCK_STREAM || local_ip4(w3))
            return 1;  // as connect4: the mesh carries TCP, and loopback stays in the pod
        if (!capture(ctx, AF_INET, mapped4(w3), port))
            return 0;
        ctx->user_ip6[3] = bpf_htonl(0x7f000001);  // ::ffff:127.0.0.1, the IPv4 listener
        ctx->user_port = bpf_htons(redirect_port(port, dns));
        return 1;
    }
    if (loopback6(w0, w1, w2, w3))
        return 1;
    if (!carry)
        return 0;  // EPERM: the mesh was told of no IPv6 address of this pod, and nothing goes around it
    if (ctx->type != SOCK_STREAM)
        return 1;
    struct addr6 ip = {.w = {w0, w1, w2, w3}};
    if (!capture(ctx, AF_INET6, ip, port))
        return 0;
    ctx->user_ip6[0] = 0;  // ::1, the IPv6 listener
    ctx->user_ip6[1] = 0;
    ctx->user_ip6[2] = 0;
    ctx->user_ip6[3] = bpf_htonl(1);
    ctx->user_port = bpf_htons(redirect_port(port, dns));
    return 1;
}

// On a pod with no IPv6 address.
int shoal_connect6(struct bpf_sock_addr *ctx) {
    return connect6(ctx, 0, 0);
}

int shoal_connect6_dns(struct bpf_sock_addr *ctx) {
    return connect6(ctx, 1, 0);
}

// On a pod with an IPv6 address.
int shoal_connect6_carry(struct bpf_sock_addr *ctx) {
    return connect6(ctx, 0, 1);
}

int shoal_connect6_carry_dns(struct bpf_sock_addr *ctx) {
    return connect6(ctx, 1, 1);
}

// On a pod with no IPv6 address: the same refusal for unconnected UDP (sendto).
int shoal_sendmsg6(struct bpf_sock_addr *ctx) {
    u32 w0 = CTX32(ctx->user_ip6[0]), w1 = CTX32(ctx->user_ip6[1]);
    u32 w2 = CTX32(ctx->user_ip6[2]), w3 = CTX32(ctx->user_ip6[3]);
    if (v4_mapped(w0, w1, w2) || loopback6(w0, w1, w2, w3))
        return 1;  // IPv4 UDP is not captured either
    return 0;
}

int shoal_getpeer4(struct bpf_sock_addr *ctx) {
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, 0);
    if (!rec || rec->family != AF_INET)
        return 1;
    ctx->user_ip4 = rec->ip.w[3];
    ctx->user_port = rec->port;
    return 1;
}

int shoal_getpeer6(struct bpf_sock_addr *ctx) {
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, 0);
    if (!rec)
        return 1;
    ctx->user_ip6[0] = rec->ip.w[0];  // an IPv4 record is held v4-mapped, as the app dialled it
    ctx->user_ip6[1] = rec->ip.w[1];
    ctx->user_ip6[2] = rec->ip.w[2];
    ctx->user_ip6[3] = rec->ip.w[3];
    ctx->user_port = rec->port;
    return 1;
}

// On the pod's cgroup: a captured connect files its record for the ztunnel's accept.
int shoal_sockops(struct bpf_sock_ops *skops) {
    struct bpf_sock *sk = skops->sk;
    if (!sk || skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
        return 1;
    if (skops->family != AF_INET && skops->family != AF_INET6)
        return 1;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, 0);
    if (!rec)
        return 1;  // loopback: nothing to hand over
    struct port_key key = {.netns = bpf_get_netns_cookie(skops), .port = skops->local_port,
                           .family = rec->family};
    struct orig_dst copy = *rec;
    orig_by_port.update(&key, &copy);
    return 1;
}

// On the ztunnel's cgroup only, so that no pod can make an uncaptured record.
int shoal_ztsockops(struct bpf_sock_ops *skops) {
    struct bpf_sock *sk = skops->sk;
    if (!sk || (skops->family != AF_INET && skops->family != AF_INET6))
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
                               .port = bpf_ntohl(skops->remote_port), .family = wire_family(skops)};
        struct orig_dst *found = orig_by_port.lookup(&key);
        if (!found)
            return 1;
        struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (rec)
            *rec = *found;
        orig_by_port.delete(&key);
    }
    return 1;
}

// SO_ORIGINAL_DST as netfilter answers it: SOL_IP for an IPv4 destination;
// SOL_IPV6 for an IPv6 one, and for an IPv4 one v4-mapped (the ztunnel may
// accept IPv4 on a dual-stack socket). An IPv6 destination has no SOL_IP form.
int shoal_getsockopt(struct bpf_sockopt *ctx) {
    if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6))
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct orig_dst *rec = orig_by_sock.sk_storage_get(sk, 0, 0);
    if (!rec)
        return 1;
    int len;
    if (ctx->level == SOL_IP) {
        if (rec->family != AF_INET)
            return 1;
        struct sockaddr_in *sin = ctx->optval;
        if ((void *)(sin + 1) > ctx->optval_end)
            return 1;
        sin->sin_family = AF_INET;
        sin->sin_port = rec->port;
        sin->sin_addr.s_addr = rec->ip.w[3];
        len = sizeof(*sin);
    } else {
        struct original_in6 *sin6 = ctx->optval;
        if ((void *)(sin6 + 1) > ctx->optval_end)
            return 1;
        sin6->family = AF_INET6;
        sin6->port = rec->port;
        sin6->flowinfo = 0;
        sin6->addr = rec->ip;
        sin6->scope_id = 0;
        len = sizeof(*sin6);
    }
    // volatile: clang would merge the two adjacent 32-bit stores into one
    // 64-bit store, which the verifier refuses for the sockopt context.
    *(volatile int *)&ctx->retval = 0;
    *(volatile int *)&ctx->optlen = len;
    return 1;
}

int shoal_sk_lookup(struct bpf_sk_lookup *ctx) {
    if (ctx->ingress_ifindex == 1)  // loopback is ifindex 1 in every netns
        return SK_PASS;
    struct addr6 local;
    int probe;
    if (ctx->family == AF_INET) {
        if (ctx->protocol != IPPROTO_TCP)
            return SK_PASS;  // the mesh carries TCP; IPv4 UDP is the app's
        local = mapped4(ctx->local_ip4);
        probe = bpf_ntohl(ctx->remote_ip4) == PROBE_IP;
    } else if (ctx->family == AF_INET6) {
        local.w[0] = CTX32(ctx->local_ip6[0]);
        local.w[1] = CTX32(ctx->local_ip6[1]);
        local.w[2] = CTX32(ctx->local_ip6[2]);
        local.w[3] = CTX32(ctx->local_ip6[3]);
        probe = CTX32(ctx->remote_ip6[0]) == PROBE_IP6_0 && CTX32(ctx->remote_ip6[1]) == PROBE_IP6_1 &&
                CTX32(ctx->remote_ip6[2]) == PROBE_IP6_2 && CTX32(ctx->remote_ip6[3]) == PROBE_IP6_3;
    } else {
        return SK_PASS;
    }
    struct bpf_sock *sk = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, SOCKHASH_FD), &local);
    if (ctx->family == AF_INET6 && !sk)
        return SK_DROP;  // not an address the pod was enrolled with: nothing goes around the mesh
    long verdict = SK_DROP;  // no listener yet (IPv4): dropped
    if (ctx->protocol != IPPROTO_TCP || ctx->local_port == HBONE_PORT || probe) {
        verdict = SK_PASS;
    } else {
        struct flow_key flow = {.src_port = bpf_ntohs(ctx->remote_port), .dst_port = ctx->local_port, .dst = local};
        if (ctx->family == AF_INET) {
            flow.src = mapped4(ctx->remote_ip4);
        } else {
            flow.src.w[0] = CTX32(ctx->remote_ip6[0]);
            flow.src.w[1] = CTX32(ctx->remote_ip6[1]);
            flow.src.w[2] = CTX32(ctx->remote_ip6[2]);
            flow.src.w[3] = CTX32(ctx->remote_ip6[3]);
        }
        if (uncaptured.lookup(&flow))
            verdict = SK_PASS;
        else if (sk)
            verdict = bpf_sk_assign(ctx, sk, 0) ? SK_DROP : SK_PASS;
    }
    if (sk)
        bpf_sk_release(sk);
    return verdict;
}
