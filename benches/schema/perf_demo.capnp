# The schema of perf_demo (benches/src/perf_demo), Flow-IPC's caching-server experiment: a client asks
# for a file by name, the server answers with the file's bytes as a list of parts, each with its size
# and hash so that the client can check what it received.
# The generated Rust is checked in as perf_demo_capnp.rs: run benches/schema/regen.sh after editing.
@0xc0bc1b7d7e2a1dd8;

struct Body {
  union {
    getCacheReq @0 :GetCacheReq;
    getCacheRsp @1 :GetCacheRsp;
  }
}

struct GetCacheReq {
  fileName @0 :Text;
  # The file to return; an empty name asks the server to drop the file it holds (no parts back).
}

struct GetCacheRsp {
  fileParts @0 :List(FilePart);
}

struct FilePart {
  data @0 :Data;
  dataSizeToVerify @1 :UInt64;
  # The length of `data`, as the server knew it.
  dataHashToVerify @2 :UInt64;
  # The hash of `data` (perf_demo's `part_hash`), as the server computed it.
}
