"""Demo latency: one image through both models (p50 / p95 over 200 calls) and app start-up time.

    python benchmarks/demo_latency.py [--model SOURCE] [--baseline SOURCE] [--calls 200]
"""
import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def startup_seconds(port: int = 7899, timeout: float = 300) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / 'app.py'), '--port', str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < timeout:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        raise TimeoutError('app.py did not answer')
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--model', default='resnet32_cifar.cifar10_lt_if100_mislas')
    p.add_argument('--baseline', default='resnet32_cifar.cifar10_lt_if100_ce')
    p.add_argument('--calls', type=int, default=200)
    args = p.parse_args()
    from mislas_timm.demo import example_images, load_demo_model, open_image, predict_pair

    mislas, baseline = load_demo_model(args.model), load_demo_model(args.baseline)
    path = example_images()[0]
    for _ in range(10):
        predict_pair(mislas, baseline, open_image(path))
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        predict_pair(mislas, baseline, open_image(path))
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    p50 = statistics.median(times)
    p95 = times[int(0.95 * len(times)) - 1]
    print(f'one image (open + preprocess + both models + formatting), {args.calls} calls: '
          f'p50 {p50:.1f} ms, p95 {p95:.1f} ms')
    print(f'app start-up (process start -> HTTP 200): {startup_seconds():.1f} s')


if __name__ == '__main__':
    main()
