#!/usr/bin/env python3
"""Drives a kvblock cache node from Python grpcio, with stubs generated from proto/ by
grpcio-tools at test time: Put (client stream), Lookup, Get (server stream) round trip, byte-exact,
plus auth and NOT_FOUND checks. Called by tests/services/python_interop_test.cc.

Payload files are named <32-hex-key>.bin. Blocks listed in --cxx-keys were written by the C++
client and must read back equal to their files too. Exit 0 on success; prints one JSON summary.
"""
import argparse
import glob
import json
import os
import tempfile

from kvblock_stubs import generate_stubs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--payload-dir", required=True)
    ap.add_argument("--cxx-keys", default="")
    args = ap.parse_args()

    import grpc
    gen = tempfile.mkdtemp(prefix="kvblock-stubs-")
    generate_stubs(args.proto_dir, gen, ["cache"])
    from kvblock.v1 import cache_pb2, cache_pb2_grpc, common_pb2

    def to_hash(hexkey):
        return common_pb2.Hash128(hi=int(hexkey[:16], 16), lo=int(hexkey[16:], 16))

    channel = grpc.insecure_channel(args.address, options=[
        ("grpc.max_receive_message_length", 64 << 20)])
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    md = [("authorization", f"Bearer {args.token}")]

    # Auth: no token and a wrong token are UNAUTHENTICATED.
    for bad in ([], [("authorization", "Bearer not-the-token")]):
        try:
            stub.Stats(cache_pb2.StatsRequest(), metadata=bad, timeout=10)
            raise SystemExit("Stats without the right token succeeded")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise SystemExit(f"expected UNAUTHENTICATED, got {e.code()}")

    payloads = {}
    for path in sorted(glob.glob(os.path.join(args.payload_dir, "*.bin"))):
        with open(path, "rb") as f:
            payloads[os.path.basename(path)[:-4]] = f.read()
    cxx_keys = [k for k in args.cxx_keys.split(",") if k]
    py_keys = [k for k in payloads if k not in cxx_keys]

    chunk = 64 * 1024
    for key in py_keys:
        data = payloads[key]

        def requests(key=key, data=data):
            yield cache_pb2.PutRequest(header=cache_pb2.PutHeader(
                key=to_hash(key), payload_bytes=len(data)))
            for off in range(0, len(data), chunk):
                yield cache_pb2.PutRequest(chunk=data[off:off + chunk])

        resp = stub.Put(requests(), metadata=md, timeout=30)
        if resp.key != to_hash(key):
            raise SystemExit(f"Put answered key {resp.key} for {key}")

    absent = "0123456789abcdef0123456789abcdef"
    lookup = stub.Lookup(cache_pb2.LookupRequest(
        keys=[to_hash(k) for k in payloads] + [to_hash(absent)]), metadata=md, timeout=10)
    for res, key in zip(lookup.results, list(payloads) + [absent]):
        want = key != absent
        if res.present != want:
            raise SystemExit(f"Lookup {key}: present={res.present}, want {want}")
        if want and res.payload_bytes != len(payloads[key]):
            raise SystemExit(f"Lookup {key}: {res.payload_bytes} bytes, want {len(payloads[key])}")

    for key, data in payloads.items():
        got = bytearray()
        size = None
        for msg in stub.Get(cache_pb2.GetRequest(key=to_hash(key), max_chunk_bytes=32768),
                            metadata=md, timeout=30):
            if msg.WhichOneof("part") == "payload_bytes":
                size = msg.payload_bytes
            else:
                got += msg.chunk
        if size != len(data) or bytes(got) != data:
            raise SystemExit(f"Get {key}: {len(got)} bytes (size {size}) differ from the file")

    try:
        list(stub.Get(cache_pb2.GetRequest(key=to_hash(absent)), metadata=md, timeout=10))
        raise SystemExit("Get of an absent key succeeded")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise SystemExit(f"expected NOT_FOUND, got {e.code()}")

    print(json.dumps({"put": len(py_keys), "read_back": len(payloads),
                      "bytes": sum(len(v) for v in payloads.values()),
                      "grpcio": grpc.__version__}))


if __name__ == "__main__":
    main()
