import { Migration } from "@mikro-orm/migrations";

/** Host liveness and enrolment, the callers' tokens, and the stale sweep. */
export class Migration20261203100000 extends Migration {
  override async up(): Promise<void> {
    // A host can now be enrolled before it ever sends a heartbeat.
    this.addSql(`
      alter table worker_host
        alter column agent_version drop not null,
        alter column first_seen_at drop not null,
        alter column last_heartbeat_at drop not null,
        add column state text not null default 'alive'
          constraint worker_host_state_check
          check (state in ('enrolled', 'alive', 'lost', 'decommissioned')),
        add column name text null,
        add column enrolled_at timestamptz(3) null,
        add column lost_at timestamptz(3) null,
        add column decommissioned_at timestamptz(3) null,
        add column certificate_fingerprint text null
          constraint worker_host_certificate_fingerprint_unique unique`);
    this.addSql(
      "create index worker_host_state_last_heartbeat_at_index on worker_host (state, last_heartbeat_at)",
    );
    // The stale sweep looks for open rows that have not moved for a while.
    this.addSql(`
      create index decky_lifecycle_open_updated_at_index
        on decky_lifecycle (updated_at)
        where status in ('pending', 'running')`);

    this.addSql(`
      create table api_token (
        id uuid primary key,
        name text not null,
        role text not null
          constraint api_token_role_check
          check (role in ('admin', 'operator', 'viewer', 'worker')),
        host_uuid uuid null,
        secret_hash bytea not null,
        created_at timestamptz(3) not null,
        revoked_at timestamptz(3) null,
        constraint api_token_worker_host_check
          check ((role = 'worker') = (host_uuid is not null))
      )`);
    this.addSql(
      "create index api_token_host_uuid_index on api_token (host_uuid)",
    );
  }
}
