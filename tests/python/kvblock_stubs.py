"""Python gRPC stubs of kvblock's protos, generated from proto/ by grpcio-tools at test time
(nothing generated is checked in). Shared by the Python interop and end-to-end clients."""
import os
import sys


def generate_stubs(proto_dir, out_dir, protos):
    """Compiles proto/kvblock/v1/<name>.proto for each name in `protos` (plus common.proto) into
    out_dir and puts out_dir on sys.path, so `from kvblock.v1 import <name>_pb2` works."""
    from grpc_tools import protoc
    import grpc_tools
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    names = ["common"] + [p for p in protos if p != "common"]
    files = [os.path.join(proto_dir, "kvblock", "v1", f"{n}.proto") for n in names]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}"] + files)
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
