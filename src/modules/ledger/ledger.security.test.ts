import { runSecurityMatrix } from "../../../test/support/security-matrix.js";
import { LEDGER_MATRIX } from "./ledger.security.matrix.js";

runSecurityMatrix(LEDGER_MATRIX);
