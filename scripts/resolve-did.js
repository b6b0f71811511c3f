#!/usr/bin/env node
// Resolve a did:ethr DID with the npm ethr-did-resolver and print the DID resolution
// result as JSON on stdout.
//
//   node scripts/resolve-did.js [--timeout=SECONDS] <rpcUrl> <registryAddress> <did>
//
// The resolver is configured with one network named "dev" whose chain id is the DID's
// hex network id (did:ethr:0x7a69:... is chain id 31337), or 31337 when the DID names
// no hex network. ethers checks that chain id against the node's eth_chainId.
//
// Exit status: 0 when the DID resolved; 1 when the result carries an error in
// didResolutionMetadata (the result is still printed); 2 for invalid arguments; 3 when
// resolution failed otherwise or did not finish within the timeout (default 30 s).
"use strict";

const { Resolver } = require("did-resolver");
const { getResolver } = require("ethr-did-resolver");
const { isAddress } = require("ethers");

const DEFAULT_CHAIN_ID = 31337;
const DEFAULT_TIMEOUT_SECONDS = 30;
// ethers prints its retry notices with console.log, so they go to stderr and stdout
// carries only the JSON result.
console.log = console.error;
console.info = console.error;
console.warn = console.error;

const USAGE =
  "usage: node scripts/resolve-did.js [--timeout=SECONDS] <rpcUrl> <registryAddress> <did>";

function fail(status, message) {
  process.stderr.write(`resolve-did: ${message}\n`);
  process.exit(status);
}

function parseArguments(argv) {
  let timeoutSeconds = DEFAULT_TIMEOUT_SECONDS;
  const positional = [];
  for (const argument of argv) {
    if (argument.startsWith("--timeout=")) {
      timeoutSeconds = Number(argument.slice("--timeout=".length));
      if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) {
        fail(2, `invalid ${argument}: expected a positive number of seconds`);
      }
    } else if (argument.startsWith("--")) {
      fail(2, `unknown option ${argument}\n${USAGE}`);
    } else {
      positional.push(argument);
    }
  }
  if (positional.length !== 3) {
    fail(2, `expected 3 arguments, got ${positional.length}\n${USAGE}`);
  }
  const [rpcUrl, registry, did] = positional;
  let protocol;
  try {
    protocol = new URL(rpcUrl).protocol;
  } catch {
    fail(
      2,
      `invalid RPC URL ${JSON.stringify(rpcUrl)}: expected http:// or https://`,
    );
  }
  if (protocol !== "http:" && protocol !== "https:") {
    fail(
      2,
      `invalid RPC URL ${JSON.stringify(rpcUrl)}: expected http:// or https://`,
    );
  }
  if (!isAddress(registry)) {
    fail(
      2,
      `invalid registry address ${JSON.stringify(registry)}: expected 0x and 40 hex digits`,
    );
  }
  return { rpcUrl, registry, did, timeoutSeconds };
}

// Returns the chain id in a DID's hex network part (0x7a69 in did:ethr:0x7a69:0xabc...),
// or DEFAULT_CHAIN_ID when the DID has none.
function chainIdOf(did) {
  const parts = did.split("?")[0].split("#")[0].split(":");
  if (parts.length === 4 && /^0x[0-9a-fA-F]+$/.test(parts[2])) {
    return Number.parseInt(parts[2], 16);
  }
  return DEFAULT_CHAIN_ID;
}

async function main() {
  const { rpcUrl, registry, did, timeoutSeconds } = parseArguments(
    process.argv.slice(2),
  );
  // ethers 6.17 retries network detection every second without end and waits 300 s
  // for a reply, so this timer ends the process. It is not unref()ed, because it also
  // keeps Node from exiting with status 0 while a request is pending.
  setTimeout(() => {
    fail(3, `no resolution result from ${rpcUrl} within ${timeoutSeconds} s`);
  }, timeoutSeconds * 1000);

  const resolver = new Resolver(
    getResolver({
      networks: [{ name: "dev", chainId: chainIdOf(did), rpcUrl, registry }],
    }),
  );
  // resolve() does not throw for a DID it cannot resolve; the error is in the result.
  const result = await resolver.resolve(did);
  const error =
    result.didResolutionMetadata && result.didResolutionMetadata.error;
  // Exit only once the output is flushed: writes to a pipe are asynchronous on macOS.
  process.stdout.write(JSON.stringify(result, null, 2) + "\n", () => {
    if (error) {
      const message = result.didResolutionMetadata.message;
      fail(
        1,
        `cannot resolve ${did}: ${error}${message ? `: ${message}` : ""}`,
      );
    }
    process.exit(0);
  });
}

main().catch((error) => {
  fail(3, `resolution failed: ${error && error.stack ? error.stack : error}`);
});
