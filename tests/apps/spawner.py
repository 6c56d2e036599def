"""/spawn?N&DIR starts N programs, by turns with os.system (posix_spawn) and subprocess with
close_fds=False (fork), each listing the descriptors it inherited into DIR/fds-K, and answers
how many it started."""
import os
import subprocess
import urllib.parse


def application(environ, start_response):
    count, directory = urllib.parse.unquote(environ["QUERY_STRING"]).split("&", 1)
    for k in range(int(count)):
        listing = f"ls -l /proc/$$/fd > {directory}/fds-{k}"
        if k % 2:
            subprocess.call(listing, shell=True, close_fds=False)
        else:
            os.system(listing)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [count.encode()]
