# flowipc's structured-channel envelope: what precedes every user message on the wire.
#
# A frame is this envelope as a standard single-segment Cap'n Proto message (segment table
# included), immediately followed by the user's message in standard segment framing (copy mode).
# The generated Rust is checked in as envelope_capnp.rs: run safe/schema/regen.sh after editing.
@0xc8821b4b237c6d0a;

struct Envelope {
  id @0 :UInt64;
  # This message's id: nonzero, strictly increasing per sender.

  originatingId @1 :UInt64;
  # For a response: the id of the message it answers. For an unexpectedResponse report: the id
  # of the peer's response that matched nothing. Zero otherwise.

  kind @2 :Kind;

  fdCount @3 :UInt16;
  # Descriptors that travel with this frame; the receiver checks the count.

  bodyEncoding @4 :BodyEncoding;

  enum Kind {
    notification @0;
    # An unsolicited message that expects no response.
    request @1;
    # An unsolicited message whose sender waits for one or more responses.
    response @2;
    # A response to the message `originatingId`.
    unexpectedResponse @3;
    # Report: the peer's response `originatingId` arrived when nothing was waiting for it. No body.
  }

  enum BodyEncoding {
    inlineSegments @0;
    # Copy mode: the body's segment table and segments follow the envelope in the frame.
    sharedSegments @1;
    # Zero-copy mode (reserved): handles of segments in shared memory follow instead.
  }
}
