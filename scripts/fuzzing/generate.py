"""Mutations shared by the generators: numbers at the edges, bytes changed in place, pieces
dropped, repeated and swapped, and the random chunkings inputs arrive in.

Every function takes the random source first and calls only `randrange`,
`random`, `choice` and `randbytes` on it (see `scripts.fuzzing`).
"""

from __future__ import annotations

# Values where length checks, sign bits and varints go wrong.
EDGES = (0, 1, 2, 7, 8, 9, 0x7F, 0x80, 0xFF, 0x100, 0x3FFF, 0x4000, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
         0x7FFFFF, 0xFFFFFF, 0x1000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


# What a flood may add to one input: enough to pass every limit under test (64 KiB heads, 1 MiB frames),
# little enough that the run's memory is the code's, not the input's (a 1 MiB frame 500 times was 500 MB).
FLOOD_BYTES = 2 << 20


def chance(rng, p: float) -> bool:
    return rng.random() < p


def edgy(rng, bits: int, typical: int = 0) -> int:
    """An unsigned `bits`-bit number: usually `typical`, often an edge (or one off it), sometimes anything."""
    top = (1 << bits) - 1
    roll = rng.random()
    if roll < 0.75:
        return typical & top
    if roll < 0.95:
        return max(0, min(top, rng.choice(EDGES) + rng.choice((-1, 0, 0, 1))))
    return rng.randrange(top + 1)


def size(rng, typical: int, largest: int) -> int:
    """A length: mostly small, now and then up to `largest` (floods and oversize frames)."""
    roll = rng.random()
    if roll < 0.8:
        return rng.randrange(typical + 1)
    if roll < 0.97:
        return rng.randrange(typical * 8 + 1)
    return rng.randrange(largest + 1)


def junk(rng, largest: int = 64) -> bytes:
    return rng.randbytes(rng.randrange(largest + 1))


def mutate_bytes(rng, data: bytes, mutations: int = 3) -> bytes:
    """`data` with a few bytes flipped, set, inserted, deleted, or cut short."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, mutations + 1)):
        roll = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if roll == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif roll == 1 and out:
            out[min(at, len(out) - 1)] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x0D, 0x0A, 0x20, 0x3A, rng.randrange(256)))
        elif roll == 2:
            out[at:at] = junk(rng, 8)
        elif roll == 3 and out:
            del out[at:at + rng.randrange(1, 9)]
        elif roll == 4:
            del out[at:]
        elif roll == 5 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start:start + rng.randrange(1, 17)]  # a slice repeated elsewhere
        else:
            out += junk(rng, 16)
    return bytes(out)


def mutate_pieces(rng, pieces: list, junk_piece=None, flood: int = 2000) -> list:
    """A sequence of messages (frames, lines, packets) with a few dropped, repeated, swapped, corrupted
    or flooded (one repeated up to `flood` times, and to about FLOOD_BYTES). `junk_piece(rng)` makes an
    unrelated piece. A piece is bytes, or a tuple whose first member is."""
    out = list(pieces)
    junk_piece = junk_piece or junk
    for _ in range(rng.randrange(1, 4)):
        roll = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if roll == 0 and out:
            del out[min(at, len(out) - 1)]
        elif roll == 1 and out:
            piece = out[min(at, len(out) - 1)]
            out[at:at] = [piece] * rng.randrange(1, 4)
        elif roll == 2 and len(out) > 1:
            i, j = rng.randrange(len(out)), rng.randrange(len(out))
            out[i], out[j] = out[j], out[i]
        elif roll == 3 and out:
            i = min(at, len(out) - 1)
            if isinstance(out[i], bytes):
                out[i] = mutate_bytes(rng, out[i])
        elif roll == 4 and out and chance(rng, 0.2):
            piece = out[min(at, len(out) - 1)]
            length = len(piece if isinstance(piece, bytes) else piece[0])
            out[at:at] = [piece] * rng.randrange(min(flood, FLOOD_BYTES // max(1, length)) + 1)
        else:
            out.insert(at, junk_piece(rng))
    return out


def chunked(rng, data: bytes) -> list[bytes]:
    """`data` split as a socket might deliver it: whole, byte by byte, in fixed sizes, or at random cuts."""
    roll = rng.randrange(5)
    if roll == 0 or not data:
        return [data] if data else []
    if roll == 1 and len(data) <= 300:
        return [data[i:i + 1] for i in range(len(data))]
    if roll == 2:
        step = rng.choice((2, 3, 7, 9, 10, 64, 1000, 16384))
        return [data[i:i + step] for i in range(0, len(data), step)]
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 12)))
    pieces, start = [], 0
    for cut in cuts + [len(data)]:
        if cut > start:
            pieces.append(data[start:cut])
            start = cut
    return pieces
