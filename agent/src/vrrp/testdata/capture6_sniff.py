import socket, sys, time
ifname, out, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86dd))
s.bind((ifname, 0))
s.settimeout(0.2)
end = time.time() + secs
with open(out, "w") as f:
    while time.time() < end:
        try:
            fr = s.recv(4096)
        except socket.timeout:
            continue
        ip = fr[14:]
        if ip[6] in (112, 58):
            f.write(fr[:14].hex() + " " + ip.hex() + "\n"); f.flush()
