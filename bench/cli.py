def main():
    from bench import __version__
    print(f"bench {__version__}")
