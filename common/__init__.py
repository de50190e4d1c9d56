"""Plumbing both programs share, each piece written once: HOST:PORT parsing, backoff
delays, describing how a process ended. No I/O, no project imports."""
