"""A target for `scry debug`: calls tick() in a loop and writes the counter to the file named
by argv[1], so that a test sees it run on after a debugger detached."""
import sys
import time


def tick(i):
    doubled = i * 2  # the breakpoint line of the test
    return doubled


def main():
    out = sys.argv[1]
    i = 0
    while True:
        tick(i)
        i += 1
        if i % 5 == 0:
            with open(out, "w") as f:
                f.write(str(i))
        time.sleep(0.02)


if __name__ == "__main__":
    main()
