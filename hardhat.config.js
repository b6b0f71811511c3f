// Hardhat 2 configuration: compiles contracts/ offline with the npm solcjs build and the
// same settings as ztfm_chain/chain/compiler.py, so both produce the same bytecode.
const path = require("path");
const { subtask } = require("hardhat/config");
const { TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD } = require("hardhat/builtin-tasks/task-names");

const SOLC_VERSION = "0.8.37";

// Hardhat would download the compiler; use the one the npm `solc` package ships.
subtask(TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD, async (args, hre, runSuper) => {
  if (args.solcVersion !== SOLC_VERSION) {
    return runSuper();
  }
  const solcPackage = require("solc/package.json");
  return {
    compilerPath: path.join(path.dirname(require.resolve("solc/package.json")), "soljson.js"),
    isSolcJs: true,
    version: args.solcVersion,
    longVersion: solcPackage.version === SOLC_VERSION ? require("solc").version() : args.solcVersion,
  };
});

/** @type import('hardhat/config').HardhatUserConfig */
module.exports = {
  solidity: {
    version: SOLC_VERSION,
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: "shanghai",
    },
  },
  paths: {
    sources: "./contracts",
    artifacts: "./artifacts-hardhat",
    cache: "./cache",
  },
  networks: {
    // The Anvil that `ztfm chain up` starts; set ANVIL_URL to its printed URL.
    localhost: {
      url: process.env.ANVIL_URL || "http://127.0.0.1:8545",
      chainId: 31337,
    },
  },
};
