// The plugin's configuration (`wasi:config/store`) for Runnel plugins in
// JavaScript: its `[plugin.config]` table, plain values and secrets the
// host read from the environment or files when it loaded the plugin.
//
//   import { config } from "runnel/config.js";
//   const endpoint = config.require("endpoint");
//
// A separate module, so that a plugin without configuration imports
// nothing of it.
import { get as storeGet, getAll as storeGetAll } from "wasi:config/store@0.2.0-rc.1";
import { Retry } from "./runnel.js";

export const config = {
  /** The value of `key`, `undefined` when the config does not set it. */
  get(key) {
    try {
      const value = storeGet(String(key));
      return value === null ? undefined : value;
    } catch {
      return undefined;
    }
  },

  /** The value of `key`; throws `Retry` naming the key when it is not set. */
  require(key) {
    const value = config.get(key);
    if (value === undefined) {
      throw new Retry(`config key ${JSON.stringify(String(key))} is not set: add it under the plugin's [plugin.config]`);
    }
    return value;
  },

  /** Every key and value, as [key, value] pairs. */
  all() {
    try {
      return storeGetAll();
    } catch {
      return [];
    }
  },
};
