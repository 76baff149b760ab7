#!/usr/bin/env python3
"""A Python grpcio client of kvblock.v1.InferenceService for the end-to-end tests (stubs generated
from proto/ at run time by grpcio-tools). Used by tests/e2e/cluster_flow_test.cc.

--requests FILE is a JSON list of requests: {"blocks": [text or [ids]], "final_block": text or
[ids], "max_new_tokens": n, "mode": "block" | "full"}. Each is sent once, in order, with the bearer
token; every streamed message's tokens are concatenated. Prints one JSON line:
{"results": [{"code", "tokens", "hits", "misses", "gpu_hits", "finish_reason", "messages"}]}
("code" is the gRPC status name; a failed call has no cache fields). Exit 0 unless the script
itself fails.
"""
import argparse
import json
import tempfile

from kvblock_stubs import generate_stubs


def set_segment(segment, value):
    if isinstance(value, str):
        segment.text = value
    else:
        segment.tokens.ids.extend(value)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--timeout-s", type=float, default=60)
    args = ap.parse_args()
    with open(args.requests) as f:
        specs = json.load(f)
    with tempfile.TemporaryDirectory() as out_dir:
        generate_stubs(args.proto_dir, out_dir, ["inference"])
        import grpc
        from kvblock.v1 import inference_pb2, inference_pb2_grpc

        modes = {"block": inference_pb2.ATTENTION_MODE_BLOCK,
                 "full": inference_pb2.ATTENTION_MODE_FULL}
        metadata = [("authorization", "Bearer " + args.token)]
        results = []
        with grpc.insecure_channel(args.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for spec in specs:
                req = inference_pb2.GenerateRequest()
                for block in spec.get("blocks", []):
                    set_segment(req.blocks.add(), block)
                set_segment(req.final_block, spec["final_block"])
                req.sampling.max_new_tokens = spec["max_new_tokens"]
                req.mode = modes[spec.get("mode", "block")]
                tokens, final, messages = [], None, 0
                try:
                    for msg in stub.Generate(req, metadata=metadata, timeout=args.timeout_s):
                        messages += 1
                        tokens.extend(msg.token_ids)
                        if msg.done:
                            final = msg
                except grpc.RpcError as e:
                    results.append({"code": e.code().name, "details": e.details()})
                    continue
                if final is None:
                    results.append({"code": "NO_FINAL_MESSAGE"})
                    continue
                results.append({"code": "OK", "tokens": tokens, "hits": final.cache.hits,
                                "misses": final.cache.misses, "gpu_hits": final.cache.gpu_hits,
                                "finish_reason": final.finish_reason, "messages": messages})
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
