"""Test bed helpers: real Nginx/Prometheus/Alertmanager/HAProxy processes and a load generator.

These exist so integration tests and benchmarks exercise the same binaries the watcher
talks to in production instead of mocks, while staying on 127.0.0.1 and owning every PID.
"""
