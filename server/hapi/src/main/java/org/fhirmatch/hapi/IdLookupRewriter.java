package org.fhirmatch.hapi;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.hibernate.resource.jdbc.spi.StatementInspector;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Rewrites HAPI's look-up of resources by type and id into a form H2 answers from its index.
 *
 * <p>HAPI resolves FHIR ids to its row ids (every PUT of a transaction, every {@code _id=} or
 * {@code patient=} list, a Bulk export's patients) with one query whose condition is
 * {@code RES_TYPE=? and FHIR_ID=? or RES_TYPE=? and FHIR_ID=? or ...}. H2 cannot use an index
 * for an OR of ANDs: it scans the whole resource table and tries every pair on every row, so
 * the cost grows with the table times the ids asked for (90 ids over 100,000 rows: 5 s; a
 * 10,000-patient load took most of its time here, and a Bulk export of 438 patients did not
 * finish in 10 minutes). The same condition as a row-value list, {@code (RES_TYPE, FHIR_ID)
 * in ((?,?),(?,?),...)}, is answered from the (RES_TYPE, FHIR_ID) index in milliseconds. The
 * parameters keep their order (type, id, type, id, ...), so only the SQL text changes.
 */
public class IdLookupRewriter implements StatementInspector {

	private static final Logger ourLog = LoggerFactory.getLogger(IdLookupRewriter.class);

	/** The first rewrite is logged, so the log shows the rewrite is in effect. */
	private static final AtomicBoolean ourLogged = new AtomicBoolean();

	/** One (alias.RES_TYPE=? and alias.FHIR_ID=?) pair; a regex for one pair only, as a
	 * repeated group would recurse once per pair and overflow the stack on long lists. */
	private static final Pattern PAIR = Pattern.compile(
			"(\\w+)\\.RES_TYPE\\s*=\\s*\\?\\s+and\\s+\\1\\.FHIR_ID\\s*=\\s*\\?", Pattern.CASE_INSENSITIVE);

	private static final Pattern OR = Pattern.compile("\\s+or\\s+", Pattern.CASE_INSENSITIVE);

	@Override
	public String inspect(String sql) {
		// Cheap test first: this runs for every statement.
		if (sql == null || !sql.contains("FHIR_ID") || !sql.toLowerCase().contains(" or ")) {
			return sql;
		}
		String rewritten = rewrite(sql);
		if (!rewritten.equals(sql) && ourLogged.compareAndSet(false, true)) {
			ourLog.info("Resource id look-ups are rewritten for H2's index, e.g.: {}", rewritten);
		}
		return rewritten;
	}

	/** A run of pairs joined by OR: where it starts and ends in the SQL, and how many. */
	private record Chain(String alias, boolean wrapped, int start, int end, int pairs) {}

	/**
	 * The SQL with each OR-chain of two or more type-and-id pairs (bare, or each in its own
	 * parentheses) that is a whole condition of its own (alone in its parentheses, or the whole
	 * WHERE) turned into a row-value IN list. A chain next to other conditions without
	 * parentheses is left alone: AND binds tighter than OR.
	 */
	static String rewrite(String sql) {
		List<Chain> chains = new ArrayList<>();
		Chain current = null;
		Matcher matcher = PAIR.matcher(sql);
		while (matcher.find()) {
			int start = matcher.start();
			int end = matcher.end();
			int open = previousNonSpace(sql, start);
			int close = nextNonSpace(sql, end);
			boolean wrapped = open >= 0 && sql.charAt(open) == '(' && close < sql.length() && sql.charAt(close) == ')';
			if (wrapped) {
				start = open;
				end = close + 1;
			}
			String alias = matcher.group(1);
			boolean continues = current != null
					&& current.alias().equals(alias)
					&& current.wrapped() == wrapped
					&& OR.matcher(sql.substring(current.end(), start)).matches();
			if (continues) {
				current = new Chain(alias, wrapped, current.start(), end, current.pairs() + 1);
			} else {
				if (current != null) {
					chains.add(current);
				}
				current = new Chain(alias, wrapped, start, end, 1);
			}
		}
		if (current != null) {
			chains.add(current);
		}
		StringBuilder out = new StringBuilder();
		int copied = 0;
		for (Chain chain : chains) {
			if (chain.pairs() < 2 || !standsAlone(sql, chain)) {
				continue;
			}
			out.append(sql, copied, chain.start());
			out.append('(').append(chain.alias()).append(".RES_TYPE,").append(chain.alias()).append(".FHIR_ID) in (");
			for (int i = 0; i < chain.pairs(); i++) {
				out.append(i == 0 ? "(?,?)" : ",(?,?)");
			}
			out.append(')');
			copied = chain.end();
		}
		if (copied == 0) {
			return sql;
		}
		return out.append(sql, copied, sql.length()).toString();
	}

	private static boolean standsAlone(String sql, Chain chain) {
		String before = sql.substring(0, chain.start()).stripTrailing().toLowerCase();
		String after = sql.substring(chain.end()).stripLeading().toLowerCase();
		boolean opens = before.endsWith("(") || before.endsWith(" where");
		boolean closes = after.isEmpty()
				|| after.startsWith(")")
				|| after.startsWith("order ")
				|| after.startsWith("fetch ")
				|| after.startsWith("offset ");
		return opens && closes;
	}

	private static int previousNonSpace(String text, int from) {
		int i = from - 1;
		while (i >= 0 && Character.isWhitespace(text.charAt(i))) {
			i--;
		}
		return i;
	}

	private static int nextNonSpace(String text, int from) {
		int i = from;
		while (i < text.length() && Character.isWhitespace(text.charAt(i))) {
			i++;
		}
		return i;
	}
}
