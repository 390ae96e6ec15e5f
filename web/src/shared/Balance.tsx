import { Amount, StatusBadge } from "../components/ui";
import type { Balance } from "../lib/api";
import { formatDateTime, isPositive } from "../lib/format";

export function LowBalanceBanner({ balance }: { balance: Balance }) {
  if (!balance.low_balance) return null;
  const depleted = !isPositive(balance.available);
  return (
    <div className="notice warning banner" role="alert" data-testid="low-balance">
      <strong>{depleted ? "Your credits are used up." : "Your balance is low."}</strong>{" "}
      {depleted
        ? "Buy credits to keep your service running."
        : "Consider buying credits or turning on auto-topup."}
    </div>
  );
}

export function BalanceFigures({ balance, big = false }: { balance: Balance; big?: boolean }) {
  return (
    <div className={big ? "balance big" : "balance"}>
      <div className="balance-main">
        <span className="label">Available credits</span>
        <span className="value" data-testid="balance">
          <Amount value={balance.available} maxFraction={big ? 4 : 6} />
        </span>
      </div>
      <dl className="facts">
        <div>
          <dt>Balance</dt>
          <dd>
            <Amount value={balance.balance} />
          </dd>
        </div>
        <div>
          <dt>Reserved</dt>
          <dd>
            <Amount value={balance.reserved} />
          </dd>
        </div>
        {balance.overdraft_limit !== "0" ? (
          <div>
            <dt>Overdraft limit</dt>
            <dd>
              <Amount value={balance.overdraft_limit} />
            </dd>
          </div>
        ) : null}
        <div>
          <dt>Auto-topup</dt>
          <dd>
            <StatusBadge status={balance.auto_topup} />
          </dd>
        </div>
        <div>
          <dt>Updated</dt>
          <dd>{formatDateTime(balance.updated_at)}</dd>
        </div>
      </dl>
    </div>
  );
}
