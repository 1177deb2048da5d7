def main() -> None:
    print("sbs-sim")
