# The schema of the structured-channel example (safe/examples/structured_ping.rs) and tests.
# The generated Rust is checked in as ping_capnp.rs: run safe/schema/regen.sh after editing.
@0xeb130c38923d9ded;

struct Body {
  union {
    ping @0 :Ping;
    pong @1 :Pong;
    note @2 :Text;
    fileOffer @3 :Text;
    # The descriptor of the file named here travels with the message.
    nested @4 :Nested;
  }
}

struct Ping {
  seq @0 :UInt64;
  payloadSize @1 :UInt32;
  # How many bytes of payload the response should carry.
  responses @2 :UInt32;
  # How many responses the sender expects (multi-response requests).
  last @3 :Bool;
  # The last request of a benchmark run (flowipc-bench's structured rows).
}

struct Pong {
  seq @0 :UInt64;
  payload @1 :Data;
  chunks @2 :List(Data);
  # A payload too large for one Data (capnp lists hold at most 2^29 elements), in parts.
}

struct Nested {
  child @0 :Nested;
  value @1 :UInt64;
}
