"""Python grpcio client of kvblock.v1.InferenceService (stubs generated from proto/ at run time).

Calls Generate with the token-id request given in --request (JSON: blocks, final_block,
max_new_tokens) twice, checks the stream shape, the second call's cache hits and that a call
without the token is UNAUTHENTICATED, and prints one JSON line with the tokens and cache reports.
"""
import argparse
import json
import os
import sys
import tempfile

# tests/python: the shared stub generator.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from kvblock_stubs import generate_stubs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--request", required=True)
    args = ap.parse_args()
    spec = json.load(open(args.request))
    with tempfile.TemporaryDirectory() as out_dir:
        generate_stubs(args.proto_dir, out_dir, ["inference"])
        import grpc
        from kvblock.v1 import inference_pb2, inference_pb2_grpc

        stub = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(args.address))
        req = inference_pb2.GenerateRequest()
        for b in spec["blocks"]:
            req.blocks.add().tokens.ids.extend(b)
        req.final_block.tokens.ids.extend(spec["final_block"])
        req.sampling.max_new_tokens = spec["max_new_tokens"]
        md = [("authorization", "Bearer " + args.token)]
        runs = []
        for _ in range(2):
            tokens, final = [], None
            for msg in stub.Generate(req, metadata=md, timeout=60):
                tokens.extend(msg.token_ids)
                if msg.done:
                    final = msg
            assert final is not None, "no final message"
            runs.append({"tokens": tokens, "hits": final.cache.hits, "misses": final.cache.misses,
                         "finish_reason": final.finish_reason,
                         "ttft_ms": final.timings.first_token_ms})
        try:
            list(stub.Generate(req, timeout=60))
            raise SystemExit("call without a token succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code()
        print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
