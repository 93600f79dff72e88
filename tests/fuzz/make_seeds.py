#!/usr/bin/env python3
"""Writes the seed corpus of the frame-decoder fuzz target (tests/fuzz/corpus).

Each seed is a stream of length-prefixed SPOP frames as HAProxy sends them.
Kept in the repository; rerun only to regenerate the seeds."""
import os, struct, sys

def varint(x):
    if x < 240:
        return bytes([x])
    out = [x & 0xFF | 0xF0]
    x = (x - 240) >> 4
    while x >= 128:
        out.append(x & 0xFF | 0x80)
        x = (x - 128) >> 7
    out.append(x)
    return bytes(out)

def s(b):
    b = b.encode() if isinstance(b, str) else b
    return varint(len(b)) + b

def t_str(v): return b'\x08' + s(v)
def t_int(v): return b'\x04' + varint(v & 0xFFFFFFFFFFFFFFFF)
def t_u32(v): return b'\x03' + varint(v)
def t_bool(v): return b'\x11' if v else b'\x01'
def t_ipv4(a): return b'\x06' + bytes(a)

def frame(ftype, payload, sid=0, fid=0, flags=1):
    body = bytes([ftype]) + struct.pack('>I', flags) + varint(sid) + varint(fid) + payload
    return struct.pack('>I', len(body)) + body

def kv(*pairs):
    return b''.join(s(k) + v for k, v in pairs)

hello = frame(1, kv(('supported-versions', t_str('2.0')), ('max-frame-size', t_u32(16380)),
                    ('capabilities', t_str('pipelining,async')), ('engine-id', t_str('E1'))))
check = frame(1, kv(('supported-versions', t_str('2.0')), ('max-frame-size', t_u32(16380)),
                    ('capabilities', t_str('')), ('healthcheck', t_bool(True))))
def request(sid, user=None, auth=None):
    args = [('unique_id', t_str('7F000001:D6A4_%d' % sid)), ('path', t_str('/v1/chat/completions')),
            ('method', t_str('POST')), ('content_length', t_int(400)), ('model', t_str('gpt-4o-mini')),
            ('max_tokens', t_int(64)), ('stream', t_bool(False)), ('client_ip', t_ipv4([127, 0, 0, 1]))]
    if user: args.insert(1, ('user', t_str(user)))
    if auth: args.insert(1, ('auth', t_str(auth)))
    return frame(3, s('llm-request') + bytes([len(args)]) + kv(*args), sid=sid, fid=1)
def response(sid):
    args = [('unique_id', t_str('7F000001:D6A4_%d' % sid)), ('status', t_int(200)),
            ('prompt_tokens', t_int(12)), ('completion_tokens', t_int(30)), ('streamed', t_bool(False))]
    return frame(3, s('llm-response') + bytes([len(args)]) + kv(*args), sid=sid, fid=2)
disconnect = frame(2, kv(('status-code', t_u32(0)), ('message', t_str('normal'))))

seeds = {
    'hello': hello,
    'healthcheck': check,
    'hello-request-response': hello + request(0, user='alice') + response(0),
    'hello-key-request': hello + request(3, auth='Bearer sk-tg-0123') + request(5),
    'pipelined': hello + b''.join(request(i, user='u%d' % i) for i in range(1, 40, 2)) + disconnect,
    'fragment': hello + frame(3, s('llm-request') + b'\x00', sid=1, fid=1, flags=0),
    'unknown-type': hello + bytes([0, 0, 0, 8, 0x0a, 0, 0, 0, 1, 0, 0, 0]),
    'ipv6-null-bool': hello + frame(3, s('m') + b'\x03' + kv(('a', b'\x07' + bytes(16)), ('b', b'\x00'), ('c', b'\x11')), sid=1, fid=1),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), 'wb') as f:
        f.write(data)
print('%d seeds in %s' % (len(seeds), out))
