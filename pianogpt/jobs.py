"""Child programs run side by side (ablate.py's recipes, leave_one_out.py's trainings and scorings),
each with its own log file, a few at a time, and stopped the way train.py stops on a signal."""
import os
import subprocess
import sys
import time

from pianogpt.cli import CliError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_job(command, log_path, threads=0):
    """Popen of `python <command...>` in the project root, its output in log_path; threads > 0
    sets OMP_NUM_THREADS, so that runs side by side each keep to their own cores."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else dict(os.environ)
    try:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        log = open(log_path, "w")
    except OSError as e:
        raise CliError(f"cannot write {log_path}: {e.strerror or e}") from None
    with log:  # the child holds its own copy of the file
        return subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_jobs(jobs, parallel, finished, threads=0):
    """Run jobs [(name, command, log_path)], `parallel` at a time; `finished` collects the names
    that exited 0. On Ctrl-C / SIGTERM (or any error) every running child is stopped: SIGTERM (train.py
    checkpoints on it), killed if it has not gone within a minute."""
    start, queue, running = time.perf_counter(), list(jobs), []
    try:
        while queue or running:
            while queue and len(running) < parallel:
                name, command, log_path = queue.pop(0)
                print(f"[{time.perf_counter() - start:6.0f} s] start {name}", flush=True)
                running.append((name, start_job(command, log_path, threads)))
            time.sleep(1)
            for name, proc in list(running):
                if proc.poll() is not None:
                    running.remove((name, proc))
                    print(f"[{time.perf_counter() - start:6.0f} s] {name} exited {proc.returncode}", flush=True)
                    if proc.returncode == 0:
                        finished.append(name)
    except BaseException:
        stop_children([proc for _, proc in running])
        raise


def stop_children(procs, grace_s=60.0):
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
