import { Command } from "commander";
import { withoutTokenSecrets } from "../auth/token.js";
import { describeFailure } from "../cli/errors.js";
import { addHostCommands } from "../cli/host-commands.js";
import { addTokenCommands } from "../cli/token-commands.js";

const program = new Command("cli")
  .description(
    "Manage decky-lifecycle's bearer tokens and worker hosts.\n\n" +
      "Token commands without --url work directly on the database the server uses " +
      "(DATABASE_URL, else the embedded database in DATA_DIR, which only one process " +
      "can open at a time: make the first admin token before starting the server). " +
      "Everything else calls a running server with an admin token.",
  )
  .showHelpAfterError();

addTokenCommands(program);
addHostCommands(program);

try {
  await program.parseAsync();
} catch (error) {
  // A token pasted where an id belongs is echoed without its secret.
  process.stderr.write(
    `error: ${withoutTokenSecrets(describeFailure(error))}\n`,
  );
  process.exitCode = 1;
}
